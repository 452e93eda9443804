"""charjax: a JAX/Flax character-level LSTM text generator (the Keras Nietzsche example)."""

__version__ = "0.1.0"
