// Package netutil resolves the addresses a node listens on into the
// addresses it advertises to its peers.
package netutil

import (
	"fmt"
	"net"
	"strconv"
)

// Advertise turns a listen address such as ":8002" or "0.0.0.0:8002" into
// one peers can dial: an unspecified host becomes this host's first private
// (or, failing that, any non-loopback) IPv4 address, and loopback when the
// host has no other.
func Advertise(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", listen, err)
	}
	if host != "" && host != "0.0.0.0" && host != "::" {
		return listen, nil
	}
	ip, err := PrivateIP()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(ip, port), nil
}

// PrivateIP returns the host's first private IPv4 address, else its first
// non-loopback IPv4 address, else 127.0.0.1.
func PrivateIP() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("list interface addresses: %w", err)
	}
	var public string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() {
			continue
		}
		if ipn.IP.IsPrivate() {
			return ipn.IP.String(), nil
		}
		if public == "" {
			public = ipn.IP.String()
		}
	}
	if public != "" {
		return public, nil
	}
	return "127.0.0.1", nil
}

// SplitPort returns the host and numeric port of addr.
func SplitPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: bad port: %w", addr, err)
	}
	return host, port, nil
}

// IsLoopback reports whether a listen address binds only loopback.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
