"""Jobs: the registry (lifecycle and caps), one stream actor per running job, and followers."""
