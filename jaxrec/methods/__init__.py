"""Methods: one module per algorithm (losses, jitted steps, ``train(config, data, seed)``)."""
