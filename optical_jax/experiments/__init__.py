"""Experiments built on training and evaluation; nothing in the library imports them."""
