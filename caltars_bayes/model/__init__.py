"""Layer 3: the measurement model: its plan, its PyMC graph, its density, simulation."""
