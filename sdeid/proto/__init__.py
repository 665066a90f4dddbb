"""smccc-user protocol v2: spec, codec, the back-end session core and the journal."""
