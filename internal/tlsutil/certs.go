// Package tlsutil makes and loads the certificates that secure a vbatch
// cluster, the way Nomad and Consul do: one private CA per cluster, and
// leaf certificates whose DNS names say the holder's role —
// server.<cluster>.vbatch for coordinators, agent.<cluster>.vbatch for
// agents, cli.<cluster>.vbatch for operators' tools. Every RPC and raft
// connection is mutual TLS, and each side checks the other's role, so a
// certificate issued to an agent can never act as a coordinator.
package tlsutil

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// Roles a certificate can name.
const (
	RoleServer = "server"
	RoleAgent  = "agent"
	RoleCLI    = "cli"
)

// DefaultCluster is the cluster name when none is configured.
const DefaultCluster = "global"

// RoleName is the DNS name that marks a certificate's role in a cluster:
// "server.global.vbatch".
func RoleName(role, cluster string) string {
	return role + "." + cluster + ".vbatch"
}

// nodeName is the DNS name that carries an agent's node id:
// "gpu1.agent.global.vbatch".
func nodeName(node, role, cluster string) string {
	return node + "." + RoleName(role, cluster)
}

// CheckName reports whether s is usable as a cluster name or node id in a
// certificate's DNS names: lower-case letters, digits and inner hyphens.
func CheckName(what, s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("%s %q: must be 1 to 63 characters", what, s)
	}
	for i, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' && i > 0 && i < len(s)-1
		if !ok {
			return fmt.Errorf("%s %q: only lower-case letters, digits and inner hyphens are allowed", what, s)
		}
	}
	return nil
}

// CA is a certificate authority that issues a cluster's certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is Cert, PEM-encoded.
	CertPEM []byte
}

// CreateCA makes a new self-signed CA for cluster, valid for validity.
// It returns the certificate and the private key, both PEM-encoded.
func CreateCA(cluster string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := CheckName("cluster name", cluster); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	skid, err := keyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vbatch CA " + cluster, Organization: []string{"vbatch"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign CA certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// ParseCA reads a CA certificate and its key.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("CA certificate: not a CA")
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("CA key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if ek, eerr := x509.ParseECPrivateKey(block.Bytes); eerr == nil {
			k = ek
		} else {
			return nil, fmt.Errorf("CA key: %w", err)
		}
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("CA key: not a signing key")
	}
	if !publicKeysEqual(signer.Public(), cert.PublicKey) {
		return nil, errors.New("CA key does not match the CA certificate")
	}
	return &CA{Cert: cert, Key: signer, CertPEM: certPEM}, nil
}

// CertRequest describes a leaf certificate.
type CertRequest struct {
	// Role is RoleServer, RoleAgent or RoleCLI.
	Role string
	// Cluster is the cluster name the role is scoped to.
	Cluster string
	// Node is the holder's node id; required for agents, whose identity
	// comes from their certificate, optional otherwise.
	Node string
	// DNSNames and IPs are extra subject names, for instance the host
	// names clients use to reach a coordinator's HTTPS API.
	DNSNames []string
	IPs      []net.IP
	// Validity is how long the certificate is valid.
	Validity time.Duration
}

// Issue signs a new certificate for req and returns it with its private
// key, both PEM-encoded.
func (ca *CA) Issue(req CertRequest) (certPEM, keyPEM []byte, err error) {
	if err := CheckName("cluster name", req.Cluster); err != nil {
		return nil, nil, err
	}
	var usage []x509.ExtKeyUsage
	names := []string{RoleName(req.Role, req.Cluster)}
	switch req.Role {
	case RoleServer:
		// Servers accept connections and make them (forwarding, raft,
		// blob transfer), and answer the API on localhost.
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		names = append(names, "localhost")
		req.IPs = append(req.IPs, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
	case RoleAgent:
		if req.Node == "" {
			return nil, nil, errors.New("an agent certificate needs the agent's node id")
		}
		// Agents dial coordinators and serve online inference to them.
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case RoleCLI:
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	default:
		return nil, nil, fmt.Errorf("unknown certificate role %q", req.Role)
	}
	if req.Node != "" {
		if err := CheckName("node id", req.Node); err != nil {
			return nil, nil, err
		}
		names = append(names, nodeName(req.Node, req.Role, req.Cluster))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	cn := RoleName(req.Role, req.Cluster)
	if req.Node != "" {
		cn = nodeName(req.Node, req.Role, req.Cluster)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: cn, Organization: []string{"vbatch"}},
		NotBefore:      now.Add(-time.Minute),
		NotAfter:       now.Add(req.Validity),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    usage,
		DNSNames:       append(names, req.DNSNames...),
		IPAddresses:    req.IPs,
		AuthorityKeyId: ca.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s certificate: %w", req.Role, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// Identity is who a verified peer certificate says its holder is.
type Identity struct {
	// Role is RoleServer, RoleAgent or RoleCLI.
	Role string
	// Node is the node id the certificate names, if any.
	Node string
}

// IdentityOf reads the role and node id that cert names for cluster. It
// trusts cert: call it only on a certificate verified against the CA.
func IdentityOf(cert *x509.Certificate, cluster string) (Identity, bool) {
	var id Identity
	for _, role := range []string{RoleServer, RoleAgent, RoleCLI} {
		rn := RoleName(role, cluster)
		for _, n := range cert.DNSNames {
			if n == rn {
				if id.Role != "" && id.Role != role {
					// A certificate naming two roles is refused outright.
					return Identity{}, false
				}
				id.Role = role
			} else if node, ok := strings.CutSuffix(n, "."+rn); ok && !strings.Contains(node, ".") {
				id.Node = node
			}
		}
	}
	return id, id.Role != ""
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n, nil
}

func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}
