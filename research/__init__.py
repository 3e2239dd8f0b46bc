"""Research probes of the addition attack (see ``README.md``); not part of the
``banel_jax`` package, which never imports this folder."""
