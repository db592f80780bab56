"""Pure protocol core: grammars, events, the JSON codec, errors. No I/O, no trio."""
