"""An experiment as its recipe describes it: every option's schema and rule gathered in one
catalog, the recipe composed with Hydra once, checked, and handed to the run typed."""
