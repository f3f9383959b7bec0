"""The one seam through which reliscale reaches third-party internals, each module version-checked."""
