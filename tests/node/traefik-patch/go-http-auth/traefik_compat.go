// Added to github.com/abbot/go-http-auth v0.4.0 in the test build of Traefik (tests/node/build.sh):
// Traefik replaces that module with its fork containous/go-http-auth, which the module proxy this
// machine uses does not serve. These are the two functions Traefik needs from the fork, written on
// top of v0.4.0's own password comparison.
package auth

import (
	"net/http"
	"strings"
)

// CheckSecret reports whether password matches secret, an htpasswd entry (MD5-crypt, {SHA} or bcrypt).
func CheckSecret(password, secret string) bool {
	compare := compareFuncs[0].compare
	for _, cmp := range compareFuncs[1:] {
		if strings.HasPrefix(secret, cmp.prefix) {
			compare = cmp.compare
			break
		}
	}
	return compare([]byte(secret), []byte(password)) == nil
}

// RequireAuthStale answers like RequireAuth (a fresh challenge); the fork also marks the old nonce
// stale so that browsers retry without asking the user again.
func (a *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
	a.RequireAuth(w, r)
}
