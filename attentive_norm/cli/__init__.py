"""The ``attentive-norm`` command line."""
