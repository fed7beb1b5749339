package devcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hangar-vm/hangar/internal/atomicfile"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// authFile is ~/.hangar-dev/auth.json.
type authFile struct {
	Issuer       string    `json:"issuer"`
	ClientID     string    `json:"client_id"`
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token"`
	ExpiresAt    time.Time `json:"expires_at"`
	Account      account   `json:"account"`
	LastRefresh  time.Time `json:"last_refresh"`
}

type account struct {
	Email string `json:"email"`
}

// refreshMargin refreshes a little before expiry, so a token does not die
// between the check and its use.
const refreshMargin = 30 * time.Second

func authHome() (string, error) {
	if h := os.Getenv("HANGAR_DEV_HOME"); h != "" {
		return h, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find home directory (set HANGAR_DEV_HOME): %w", err)
	}
	return filepath.Join(home, ".hangar-dev"), nil
}

func authPath(home string) string { return filepath.Join(home, "auth.json") }

// errNotLoggedIn is returned when there is no usable credential file.
var errNotLoggedIn = errors.New("not logged in: run hangar-devcli login")

func loadAuth(home string) (authFile, error) {
	var a authFile
	b, err := os.ReadFile(authPath(home))
	if errors.Is(err, os.ErrNotExist) {
		return a, errNotLoggedIn
	}
	if err != nil {
		return a, fmt.Errorf("read credentials: %w", err)
	}
	if err := json.Unmarshal(b, &a); err != nil {
		// The JSON error could quote a piece of a token: leave it out.
		return a, fmt.Errorf("%s is not valid JSON; run hangar-devcli login again", authPath(home))
	}
	if a.AccessToken == "" || a.RefreshToken == "" {
		return a, fmt.Errorf("%s holds no tokens; run hangar-devcli login again", authPath(home))
	}
	return a, nil
}

// saveAuth writes the credential file atomically (temp file, fsync,
// rename) with mode 0600, so a reader never sees half a file and a crash
// never leaves none.
func saveAuth(home string, a authFile) error {
	if err := os.MkdirAll(home, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", home, err)
	}
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	return atomicfile.Write(authPath(home), append(b, '\n'), 0o600)
}

// tokenResponse and oauthError are the issuer's JSON answers.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
}

type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description"`
	Status      int    `json:"-"`
}

func (e *oauthError) Error() string {
	if e.Description != "" {
		return fmt.Sprintf("%s (%s, HTTP %d)", e.Description, e.Code, e.Status)
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Code, e.Status)
}

type userinfo struct {
	Sub   string `json:"sub"`
	Email string `json:"email"`
	Name  string `json:"name"`
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// decodeResponse reads a JSON success body into v, or an OAuth error.
// Bodies are never echoed into errors: a success body holds tokens.
func decodeResponse(resp *http.Response, v any) error {
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		oe := &oauthError{Status: resp.StatusCode}
		if json.Unmarshal(body, oe) != nil || oe.Code == "" {
			oe.Code = "unexpected response"
		}
		return oe
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("the issuer answered HTTP %d with a body that is not the expected JSON", resp.StatusCode)
	}
	return nil
}

func postToken(ctx context.Context, issuer string, form url.Values) (tokenResponse, error) {
	var tr tokenResponse
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, issuer+"/token", strings.NewReader(form.Encode()))
	if err != nil {
		return tr, fmt.Errorf("token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return tr, fmt.Errorf("reach the issuer at %s: %w", issuer, redactURLError(err))
	}
	if err := decodeResponse(resp, &tr); err != nil {
		return tr, err
	}
	if tr.AccessToken == "" || tr.RefreshToken == "" {
		return tr, errors.New("the issuer's token response lacks an access or refresh token")
	}
	return tr, nil
}

func getUserinfo(ctx context.Context, issuer, accessToken string) (userinfo, error) {
	var ui userinfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, issuer+"/userinfo", nil)
	if err != nil {
		return ui, fmt.Errorf("userinfo request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+accessToken)
	resp, err := httpClient.Do(req)
	if err != nil {
		return ui, fmt.Errorf("reach the issuer at %s: %w", issuer, redactURLError(err))
	}
	if err := decodeResponse(resp, &ui); err != nil {
		return ui, err
	}
	return ui, nil
}

// redactURLError drops the URL from a *url.Error: the token endpoint's URL
// carries nothing secret, but keeping errors free of request details is
// the simpler rule.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// issuerFor picks the issuer for a stored credential.
func (e *env) issuerFor(a authFile) string {
	switch {
	case e.issuer != "":
		return e.issuer
	case a.Issuer != "":
		return a.Issuer
	}
	return defaultIssuer
}

// refresh exchanges the refresh token (which rotates) and saves the new
// tokens before anything else can fail, since the old refresh token is now
// spent.
func (e *env) refresh(ctx context.Context, a authFile) (authFile, error) {
	clientID := a.ClientID
	if clientID == "" {
		clientID = defaultClientID
	}
	tr, err := postToken(ctx, e.issuerFor(a), url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {a.RefreshToken}, "client_id": {clientID},
	})
	if err != nil {
		var oe *oauthError
		if errors.As(err, &oe) && oe.Code == "invalid_grant" {
			return a, fmt.Errorf("your login has expired or was revoked (%s): run hangar-devcli login again", oe.Description)
		}
		return a, fmt.Errorf("refresh the access token: %w", err)
	}
	a.AccessToken, a.RefreshToken = tr.AccessToken, tr.RefreshToken
	a.ExpiresAt = e.now().Add(time.Duration(tr.ExpiresIn) * time.Second).UTC()
	a.LastRefresh = e.now().UTC()
	if err := saveAuth(e.home, a); err != nil {
		return a, err
	}
	return a, nil
}

// validate loads the credentials, refreshes them when expired (or when the
// issuer says the access token is no longer valid), and returns the
// account from /userinfo.
func (e *env) validate(ctx context.Context) (userinfo, authFile, error) {
	a, err := loadAuth(e.home)
	if err != nil {
		return userinfo{}, a, err
	}
	refreshed := false
	if !e.now().Add(refreshMargin).Before(a.ExpiresAt) {
		if a, err = e.refresh(ctx, a); err != nil {
			return userinfo{}, a, err
		}
		refreshed = true
	}
	ui, err := getUserinfo(ctx, e.issuerFor(a), a.AccessToken)
	var oe *oauthError
	if err != nil && errors.As(err, &oe) && oe.Status == http.StatusUnauthorized && !refreshed {
		if a, err = e.refresh(ctx, a); err != nil {
			return userinfo{}, a, err
		}
		ui, err = getUserinfo(ctx, e.issuerFor(a), a.AccessToken)
	}
	if err != nil {
		return userinfo{}, a, fmt.Errorf("check the login with the issuer: %w", err)
	}
	if ui.Email != "" && ui.Email != a.Account.Email {
		a.Account.Email = ui.Email
		if err := saveAuth(e.home, a); err != nil {
			return userinfo{}, a, err
		}
	}
	return ui, a, nil
}
