package login

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// The sealed plaintext of a credential record is every credential file of
// the provider, by path. Logins write it; the credential manager
// (internal/creds) opens it to deliver the files into CLI VMs and writes it
// again when a CLI rotated its tokens.

// SealFiles encodes files as the plaintext of a credential record. It is
// secret: never log it.
func SealFiles(r *Recipe, files map[string][]byte) ([]byte, error) {
	plain := sealedFiles{RecipeVersion: r.Version, Files: map[string]string{}}
	for p, b := range files {
		plain.Files[p] = base64.StdEncoding.EncodeToString(b)
	}
	return json.Marshal(plain)
}

// OpenFiles decodes a credential record's plaintext into files by path.
func OpenFiles(plain []byte) (map[string][]byte, error) {
	var sf sealedFiles
	if err := json.Unmarshal(plain, &sf); err != nil {
		return nil, errors.New("the sealed credential is not in the expected format")
	}
	out := map[string][]byte{}
	for p, enc := range sf.Files {
		b, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, fmt.Errorf("the sealed credential file %s is not base64", p)
		}
		out[p] = b
	}
	return out, nil
}

// CheckFiles says whether files are a complete credential of r: every
// required file present, JSON files parse and have their required fields.
// Errors name files and fields, never contents.
func (r *Recipe) CheckFiles(files map[string][]byte) error {
	for _, f := range r.Credentials {
		b, ok := files[f.Path]
		if !ok {
			if f.Required {
				return fmt.Errorf("credential file %s is missing", f.Path)
			}
			continue
		}
		if !f.JSON {
			continue
		}
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			return fmt.Errorf("credential file %s is not valid JSON", f.Path)
		}
		for _, field := range f.RequiredFields {
			if _, ok := lookup(doc, field); !ok {
				return fmt.Errorf("credential file %s lacks %s", f.Path, field)
			}
		}
	}
	return nil
}

// MetadataJSON is the non-secret metadata stored beside a credential.
func MetadataJSON(r *Recipe, files map[string][]byte) []byte {
	b, _ := json.Marshal(credentialMetadata(r, Capture{Files: files}))
	return b
}

// Secrets lists the string values in files that look like tokens (JSON
// strings of 16 bytes or more), so output that might echo them can be
// redacted.
func Secrets(files map[string][]byte) []string {
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		case string:
			if len(x) >= 16 {
				out = append(out, x)
			}
		}
	}
	for _, b := range files {
		var doc any
		if json.Unmarshal(b, &doc) == nil {
			walk(doc)
		} else if len(b) >= 16 {
			out = append(out, string(b))
		}
	}
	return out
}
