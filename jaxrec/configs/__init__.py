"""Method configs as plain data: one dataclass per method, free of JAX, so that an experiment's command line
(``jaxrec.cli``) is built and checked from the fields before JAX loads. Each field carries its help text
and its check (``jaxrec.cli.param``); the method modules import their config from here."""
