// Package ext stands in for Traefik's nested module github.com/traefik/traefik/dynamic/ext in the
// test build (tests/node/build.sh). Traefik's go.mod replaces it with ./pkg/config/dynamic/ext, a
// directory the published module zip leaves out (a nested module), and the module proxy does not
// serve it either. Traefik v3.7.13 embeds two of its types, inline, as extension points with no
// fields of their own, so empty structs give the same configuration.
package ext

// HTTP is embedded in dynamic.HTTPConfiguration.
type HTTP struct{}

// Router is embedded in dynamic.Router.
type Router struct{}
