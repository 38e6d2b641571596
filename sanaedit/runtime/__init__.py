"""From a source and the user's choices to a running pipeline: the typed run plan, the one assembly, and the tiny
random stand-in."""
