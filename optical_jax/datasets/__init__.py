"""Dataset builders."""
