"""Layer 5: derived quantities of a fit: reliability, structure, validity, checks, comparison."""
