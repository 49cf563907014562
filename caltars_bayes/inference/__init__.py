"""Layer 4: fitting: samplers, the Fit core and its record, diagnostics, tables, predictions."""
