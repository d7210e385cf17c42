"""Built-in plugins, loaded through the ``lmmr1`` entry points like any third-party plugin."""
