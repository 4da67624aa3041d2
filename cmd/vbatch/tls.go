package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/tlsutil"
)

// addGossipKeyFlags adds the gossip encryption flags.
func addGossipKeyFlags(f *pflag.FlagSet, key, keyFile *string) {
	f.StringVar(key, "gossip-key", "", "base64 32-byte gossip encryption key (or VBATCH_GOSSIP_KEY; make one with `vbatch gossip keygen`)")
	f.StringVar(keyFile, "gossip-key-file", "", "file holding the gossip encryption key")
}

// addTLSFlags adds the certificate flags coordinators and agents share.
func addTLSFlags(f *pflag.FlagSet, files *tlsutil.Files, cluster *string) {
	f.StringVar(&files.CertFile, "tls-cert", "", "PEM certificate of this node (with --tls-key and --tls-ca: HTTPS and mutual TLS)")
	f.StringVar(&files.KeyFile, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&files.CAFile, "tls-ca", "", "PEM CA certificate peers' certificates must be signed by")
	f.StringVar(cluster, "cluster-name", tlsutil.DefaultCluster, "cluster name: certificate roles are <role>.<cluster>.vbatch, and gossip is labelled with it")
}

// catchSIGHUP catches SIGHUP from now on, before the node starts, so that
// a reload arriving during start-up does not kill it (SIGHUP's default
// action); onSIGHUP serves what it catches once the node runs.
func catchSIGHUP() chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch
}

// onSIGHUP handles the SIGHUPs ch catches until ctx ends (one that came
// during start-up first): with TLS, certificates are read again without a
// restart (systemctl reload). The signal is always caught, so a reload
// never kills a node that has nothing to reload (the log file, if any, is
// reopened by setupLogging's own handler).
func onSIGHUP(ctx context.Context, ch chan os.Signal, logger *slog.Logger, tlsOn bool, reload func() error) {
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				if !tlsOn {
					logger.Info("SIGHUP: no certificates to reload")
					continue
				}
				if err := reload(); err != nil {
					logger.Error("reload on SIGHUP failed; the current certificates stay in use", "err", err)
				}
			}
		}
	}()
}

func tlsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tls", Short: "Make a CA and certificates for a cluster's TLS"}
	ca := &cobra.Command{Use: "ca", Short: "Manage the cluster CA"}
	ca.AddCommand(tlsCACreateCmd())
	cert := &cobra.Command{Use: "cert", Short: "Manage node certificates"}
	cert.AddCommand(tlsCertCreateCmd())
	cmd.AddCommand(ca, cert)
	return cmd
}

func tlsCACreateCmd() *cobra.Command {
	var cluster, dir string
	var days int
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a CA: vbatch-ca.pem and vbatch-ca-key.pem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certPEM, keyPEM, err := tlsutil.CreateCA(cluster, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			certPath, keyPath := filepath.Join(dir, "vbatch-ca.pem"), filepath.Join(dir, "vbatch-ca-key.pem")
			if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
				return err
			}
			if err := writeNew(certPath, certPEM, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "==> CA certificate saved to %s\n==> CA key saved to %s (keep it offline)\n", certPath, keyPath)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cluster, "cluster-name", tlsutil.DefaultCluster, "cluster the CA issues certificates for")
	f.StringVar(&dir, "dir", ".", "directory to write the files to")
	f.IntVar(&days, "days", 5*365, "validity in days")
	return cmd
}

func tlsCertCreateCmd() *cobra.Command {
	var server, agentRole, cli bool
	var cluster, node, dir, caFile, keyFile string
	var dnsNames []string
	var ips []net.IP
	var days int
	cmd := &cobra.Command{
		Use:   "create (--server|--agent --node ID|--cli)",
		Short: "Create a certificate for a coordinator, an agent or an operator",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			role, err := pickRole(server, agentRole, cli)
			if err != nil {
				return err
			}
			caPEM, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("read CA certificate: %w", err)
			}
			caKey, err := os.ReadFile(keyFile)
			if err != nil {
				return fmt.Errorf("read CA key: %w", err)
			}
			ca, err := tlsutil.ParseCA(caPEM, caKey)
			if err != nil {
				return err
			}
			certPEM, keyPEM, err := ca.Issue(tlsutil.CertRequest{
				Role: role, Cluster: cluster, Node: node, DNSNames: dnsNames, IPs: ips,
				Validity: time.Duration(days) * 24 * time.Hour,
			})
			if err != nil {
				return err
			}
			base, err := freeName(dir, cluster+"-"+role+"-vbatch", node)
			if err != nil {
				return err
			}
			certPath, keyPath := filepath.Join(dir, base+".pem"), filepath.Join(dir, base+"-key.pem")
			if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
				return err
			}
			if err := writeNew(certPath, certPEM, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "==> %s certificate saved to %s\n==> key saved to %s\n", role, certPath, keyPath)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&server, "server", false, "a coordinator's certificate (names server.<cluster>.vbatch)")
	f.BoolVar(&agentRole, "agent", false, "an agent's certificate (names agent.<cluster>.vbatch and the node id)")
	f.BoolVar(&cli, "cli", false, "an operator's client certificate (names cli.<cluster>.vbatch)")
	f.StringVar(&node, "node", "", "node id the certificate names (required with --agent)")
	f.StringVar(&cluster, "cluster-name", tlsutil.DefaultCluster, "cluster the certificate is for")
	f.StringVar(&caFile, "ca", "vbatch-ca.pem", "CA certificate")
	f.StringVar(&keyFile, "ca-key", "vbatch-ca-key.pem", "CA private key")
	f.StringVar(&dir, "dir", ".", "directory to write the files to")
	f.StringSliceVar(&dnsNames, "additional-dnsname", nil, "extra DNS name, e.g. the API's host name (repeatable)")
	f.IPSliceVar(&ips, "additional-ipaddress", nil, "extra IP address, e.g. the API's address (repeatable)")
	f.IntVar(&days, "days", 365, "validity in days")
	return cmd
}

func pickRole(server, agentRole, cli bool) (string, error) {
	n := 0
	role := ""
	for _, r := range []struct {
		on   bool
		name string
	}{{server, tlsutil.RoleServer}, {agentRole, tlsutil.RoleAgent}, {cli, tlsutil.RoleCLI}} {
		if r.on {
			n++
			role = r.name
		}
	}
	if n != 1 {
		return "", errors.New("give exactly one of --server, --agent, --cli")
	}
	return role, nil
}

// freeName picks the file base name: "<cluster>-<role>-vbatch-<node>" for
// a named node, else the first "<cluster>-<role>-vbatch-N" not yet taken,
// as `nomad tls cert create` does.
func freeName(dir, prefix, node string) (string, error) {
	if node != "" {
		return prefix + "-" + node, nil
	}
	for i := 0; i < 10000; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		if _, err := os.Stat(filepath.Join(dir, name+".pem")); errors.Is(err, os.ErrNotExist) {
			return name, nil
		}
	}
	return "", fmt.Errorf("no free certificate file name in %s", dir)
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

func gossipCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gossip", Short: "Gossip encryption keys"}
	cmd.AddCommand(&cobra.Command{
		Use:   "keygen",
		Short: "Print a new random gossip encryption key (base64, 32 bytes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := gossip.GenerateKey()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), k)
			return nil
		},
	})
	return cmd
}
