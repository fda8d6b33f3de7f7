"""Images in and out: `predict`'s sources, drawing instances, the images shipped with the
package."""
