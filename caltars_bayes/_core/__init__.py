"""Layer 0: what every layer uses: errors, atomic files, figures, dims, summaries, keys."""
