"""Layer 2: ratings and covariates read, validated once, labelled and reported."""
