"""Stage 2, the plan: FLOP accounting, sizing, the compiled IsoFLOP plan of experiments and
their jobs (identity = content hash), and the checks that run before anything trains."""
