"""Models: pure score functions over parameter pytrees (``mf``) and Flax modules used via init/apply."""
