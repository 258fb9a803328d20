"""One module per pipeline stage; each asset parses config, calls one core step, returns metadata."""
