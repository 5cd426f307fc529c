"""RFC 8182 (RRDP), sans-I/O: model values, a streaming parser, a streaming writer, a planner."""
