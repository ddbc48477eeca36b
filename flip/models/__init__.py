"""LightningModules that flip recipes can name as `model`."""
