"""Processing algorithms of the HSSCL provider: coregister, match, apply."""
