"""Data stage: reading and validating the panel, the study config, spatial weights, geography."""
