"""DKIM: keys and selectors in the state dir, rotation state, signing on delivery."""
