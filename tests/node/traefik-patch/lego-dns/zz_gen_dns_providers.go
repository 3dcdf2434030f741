// Replaces lego's generated registry of ACME DNS-01 providers in the test build of Traefik
// (tests/node/build.sh). The module proxy this machine uses lacks most of those providers' cloud
// SDKs, and a test node never asks a certificate authority for anything, so every name is unknown.
package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName refuses every provider: this build has none.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("unrecognized DNS provider: %s (this test build of Traefik has no ACME DNS providers)", name)
}
