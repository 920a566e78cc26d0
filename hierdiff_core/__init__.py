"""hierdiff core: framework-free hierarchical sampling engine."""
