"""Layer 1: specs parsed from TOML: instruments, model options, priors, validity hypotheses."""
