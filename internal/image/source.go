package image

// FindSourceDir returns the hangar source tree above the working directory,
// or an error when there is none (an installed daemon).
func FindSourceDir() (string, error) { return findSourceDir() }
