package api

// FileInfo describes a file read from a VM: its size (sent as
// Content-Length) and permission bits (sent as X-File-Mode, octal).
type FileInfo struct {
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"`
}
