package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/hangar-vm/hangar/pkg/api"
)

// requestTypes are the bodies the API decodes; the fuzzer tries each.
var requestTypes = []func() any{
	func() any { return &api.CreateUserRequest{} },
	func() any { return &api.CreateVMRequest{} },
	func() any { return &api.ExecRequest{} },
	func() any { return &api.CreateAuthSessionRequest{} },
	func() any { return &api.AuthInputRequest{} },
	func() any { return &api.PutNetworkPolicyRequest{} },
	func() any { return &api.CreateAPIKeyRequest{} },
}

// FuzzDecodeJSON: for every request type, whatever the body, decodeJSON
// either refuses it with a 4xx API error or accepts exactly one valid JSON
// value that encoding/json reads the same way (no field the strict decoder
// saw differently, nothing after it).
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"name":"bob"}`, `{"kind":"cli","vcpus":2}`, `{"command":["sh","-c","x"]}`,
		`{"provider":"dev"}`, `{"mode":"allow","allow":["10.0.0.0/8"]}`, `{"expires_in":"24h"}`,
		`{"name":"bob"}}`, `{"name":"bob"} x`, `{} {}`, `[]`, `null`, `{"name":1}`, ``, `{"colour":"red"}`} {
		for i := range requestTypes {
			f.Add(s, uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, body string, which uint8) {
		mk := requestTypes[int(which)%len(requestTypes)]
		r := httptest.NewRequest(http.MethodPost, "/x", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		got := mk()
		err := decodeJSON(r, got)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status < 400 || ae.status > 499 {
				t.Fatalf("body %q: error %v is not a 4xx API error", body, err)
			}
			return
		}
		if !json.Valid([]byte(body)) || !strings.HasPrefix(strings.TrimLeft(body, " \t\r\n"), "{") {
			t.Fatalf("accepted %q, which is not one valid JSON object", body)
		}
		want := mk()
		if err := json.Unmarshal([]byte(body), want); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", body, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("body %q decoded as %+v, encoding/json reads %+v", body, got, want)
		}
	})
}
