package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vbatch/vbatch/coordinator/blob"
)

// blobsCmd holds offline maintenance of a coordinator's blob store.
func blobsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "blobs", Short: "Offline maintenance of a stopped coordinator's blob store"}
	var dataDir, format string
	rewrite := &cobra.Command{
		Use:   "rewrite-sums",
		Short: "Rewrite every blob's block sums in a format (sha256 before a downgrade to a build older than CRC32C sums)",
		Long: `Rewrite the sidecar of every blob in a stopped coordinator's --data-dir with
block sums in --format. Each blob is read whole and verified first; a
corrupt one is quarantined (the coordinator's repair fetches it again).
Builds before CRC32C block sums read only sha256 sidecars: run this with
--format sha256 before starting such a build on the data dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := blob.ParseSumFormat(format)
			if err != nil {
				return err
			}
			s, unlock, err := openStoppedStore(dataDir)
			if err != nil {
				return err
			}
			defer unlock()
			done, skipped, err := s.RewriteSums(f)
			fmt.Fprintf(cmd.OutOrStdout(), "%d blobs now have %s block sums; %d corrupt or gone, skipped\n", done, f, skipped)
			return err
		},
	}
	rewrite.Flags().StringVar(&dataDir, "data-dir", "", "the coordinator's --data-dir (the coordinator must be stopped)")
	rewrite.Flags().StringVar(&format, "format", "sha256", "block sum format: sha256 or crc32c")
	cmd.AddCommand(rewrite, blobsVerifyCmd())
	return cmd
}

// blobsVerifyCmd reads every blob of a stopped coordinator's store once.
func blobsVerifyCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Read and verify every blob of a stopped coordinator's store",
		Long: `Read every blob in a stopped coordinator's --data-dir whole, checking its
block sums and its sha256 name, as the running coordinator's scrub does
(--blob-scrub-interval) but at full speed. A corrupt copy is moved to
quarantine; once the coordinator runs again its repair pass fetches a good
copy from a peer. Exits 1 if any blob was corrupt or unreadable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, unlock, err := openStoppedStore(dataDir)
			if err != nil {
				return err
			}
			defer unlock()
			stats, err := (&blob.Scrubber{Store: s}).Pass(cmd.Context())
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%d blobs verified (%d bytes); %d corrupt, %d unreadable\n", stats.Blobs, stats.Bytes, len(stats.Corrupt), stats.Failed)
			for _, sha := range stats.Corrupt {
				fmt.Fprintf(out, "corrupt, quarantined: %s\n", sha)
			}
			switch {
			case err != nil:
				return err
			case len(stats.Corrupt) > 0 || stats.Failed > 0:
				return fmt.Errorf("%d corrupt and %d unreadable blobs", len(stats.Corrupt), stats.Failed)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the coordinator's --data-dir (the coordinator must be stopped)")
	return cmd
}

// openStoppedStore opens the blob store of a stopped coordinator's data
// dir, holding the lock that keeps one from starting meanwhile; unlock
// releases it.
func openStoppedStore(dataDir string) (s *blob.Store, unlock func(), err error) {
	if dataDir == "" {
		return nil, nil, errors.New("--data-dir is required")
	}
	if unlock, err = lockStopped(dataDir); err != nil {
		return nil, nil, err
	}
	if s, err = blob.Open(filepath.Join(dataDir, "blobs")); err != nil {
		unlock()
		return nil, nil, fmt.Errorf("open blob store: %w", err)
	}
	return s, unlock, nil
}

// lockStopped takes the lock a running coordinator holds on its raft log,
// so that the store is not changed under one (and none starts meanwhile).
func lockStopped(dataDir string) (unlock func(), err error) {
	path := filepath.Join(dataDir, "raft", "raft.db")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("no coordinator data in %s: %w", dataDir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("a coordinator has %s open: stop it first", dataDir)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { _ = f.Close() }, nil
}
