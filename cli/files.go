package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"
)

// fileObject is OpenAI's File object, the fields vbctl shows.
type fileObject struct {
	ID        string `json:"id"`
	Bytes     int64  `json:"bytes"`
	CreatedAt int64  `json:"created_at"`
	ExpiresAt int64  `json:"expires_at"`
	Filename  string `json:"filename"`
	Purpose   string `json:"purpose"`
	Status    string `json:"status"`
}

// fileList is the answer of GET /v1/files.
type fileList struct {
	Data    []fileObject `json:"data"`
	HasMore bool         `json:"has_more"`
	LastID  string       `json:"last_id"`
}

// errUploadDone unblocks an upload's form writer once the request is over.
var errUploadDone = errors.New("upload request ended")

func filesCmd(e *env) *cobra.Command {
	cmd := groupCmd("files", "Upload, list, download and delete files")
	cmd.AddCommand(filesUploadCmd(e), filesListCmd(e), filesGetCmd(e), filesDownloadCmd(e), filesDeleteCmd(e))
	return cmd
}

func filesUploadCmd(e *env) *cobra.Command {
	var purpose string
	cmd := &cobra.Command{
		Use:   "upload FILE",
		Short: "Upload a file; it is streamed, never held in memory",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, raw, err := e.uploadFile(cmd.Context(), args[0], purpose)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			return e.showFiles([]fileObject{f})
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", "batch", "purpose of the file (batch for batch input)")
	return cmd
}

func filesListCmd(e *env) *cobra.Command {
	var purpose, after, order string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List files",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			setNonEmpty(q, "purpose", purpose)
			setNonEmpty(q, "after", after)
			setNonEmpty(q, "order", order)
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var l fileList
			raw, err := e.call(cmd.Context(), http.MethodGet, withQuery("/v1/files", q), nil, &l)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			if err := e.showFiles(l.Data); err != nil {
				return err
			}
			if l.HasMore {
				fmt.Fprintf(e.stderr, "More files: vbctl files list --after %s\n", l.LastID)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", "", "only files with this purpose")
	cmd.Flags().IntVar(&limit, "limit", 0, "most files to list (server default when 0)")
	cmd.Flags().StringVar(&after, "after", "", "list the files after this file id")
	cmd.Flags().StringVar(&order, "order", "", "asc or desc by creation time (server default: desc)")
	return cmd
}

func filesGetCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one file",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var f fileObject
			raw, err := e.call(cmd.Context(), http.MethodGet, "/v1/files/"+url.PathEscape(args[0]), nil, &f)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			return e.showFiles([]fileObject{f})
		},
	}
}

func filesDownloadCmd(e *env) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "download ID",
		Short: "Download a file's content to -f FILE, or to stdout",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := e.download(cmd.Context(), args[0], out)
			if err != nil {
				return err
			}
			if out != "-" && out != "" {
				fmt.Fprintf(e.stderr, "Wrote %s (%s)\n", out, fmtBytes(n))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "file", "f", "-", "where to write the content; - for stdout")
	return cmd
}

func filesDeleteCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a file",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res struct {
				ID      string `json:"id"`
				Deleted bool   `json:"deleted"`
			}
			raw, err := e.call(cmd.Context(), http.MethodDelete, "/v1/files/"+url.PathEscape(args[0]), nil, &res)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			if !res.Deleted {
				return fmt.Errorf("file %s: the server did not delete it", args[0])
			}
			fmt.Fprintf(e.stdout, "Deleted %s\n", orDash(res.ID))
			return nil
		},
	}
}

func (e *env) showFiles(files []fileObject) error {
	rows := make([][]string, 0, len(files))
	for _, f := range files {
		rows = append(rows, []string{f.ID, f.Purpose, fmtBytes(f.Bytes), f.Filename, fmtTime(f.CreatedAt)})
	}
	return e.table([]string{"ID", "PURPOSE", "SIZE", "FILENAME", "CREATED"}, rows)
}

// uploadFile streams the file at path as a multipart form through a pipe,
// the purpose field first and then the file part, so the server can refuse
// a wrong purpose before it stores any bytes. It returns the File object
// decoded and as the server wrote it.
func (e *env) uploadFile(ctx context.Context, path, purpose string) (fileObject, json.RawMessage, error) {
	var f fileObject
	src, err := os.Open(path)
	if err != nil {
		return f, nil, fmt.Errorf("upload: %w", err)
	}
	defer src.Close()
	if st, err := src.Stat(); err != nil {
		return f, nil, fmt.Errorf("upload: %w", err)
	} else if st.IsDir() {
		return f, nil, fmt.Errorf("upload %s: is a directory", path)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	written := make(chan error, 1)
	go func() {
		err := writeUploadForm(mw, purpose, filepath.Base(path), src)
		pw.CloseWithError(err)
		written <- err
	}()
	body, err := e.client.Stream(ctx, http.MethodPost, "/v1/files", mw.FormDataContentType(), pr)
	// The server may answer before it read the whole form (an error, a
	// file too large): stop the writer rather than leave it blocked.
	pr.CloseWithError(errUploadDone)
	werr := <-written
	if err != nil {
		return f, nil, withContext(err, "upload %s", path)
	}
	defer body.Close()
	if werr != nil && !errors.Is(werr, errUploadDone) {
		return f, nil, fmt.Errorf("upload %s: %w", path, werr)
	}
	var raw json.RawMessage
	if err := json.NewDecoder(body).Decode(&raw); err != nil {
		return f, nil, fmt.Errorf("upload %s: decode answer: %w", path, err)
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return f, nil, fmt.Errorf("upload %s: decode answer: %w", path, err)
	}
	return f, raw, nil
}

// writeUploadForm writes the purpose field, then the file part copied from
// src, then closes the form.
func writeUploadForm(mw *multipart.Writer, purpose, filename string, src io.Reader) error {
	if err := mw.WriteField("purpose", purpose); err != nil {
		return fmt.Errorf("write purpose field: %w", err)
	}
	part, err := mw.CreateFormFile("file", filename)
	if err != nil {
		return fmt.Errorf("write file part: %w", err)
	}
	if _, err := io.Copy(part, src); err != nil {
		return fmt.Errorf("write file part: %w", err)
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("close form: %w", err)
	}
	return nil
}

// download streams file id's content to out ("-" or "": stdout), through
// out.part renamed when complete so a failed download leaves no partial
// file under the final name. It returns the bytes written.
func (e *env) download(ctx context.Context, id, out string) (int64, error) {
	if out != "-" && out != "" {
		// Refused before the transfer, not after it.
		if st, err := os.Stat(out); err == nil && st.IsDir() {
			return 0, fmt.Errorf("download %s: %s is a directory; name the file to write", id, out)
		}
	}
	body, err := e.client.Stream(ctx, http.MethodGet, "/v1/files/"+url.PathEscape(id)+"/content", "", nil)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	if out == "-" || out == "" {
		n, err := io.Copy(e.stdout, body)
		if err != nil {
			return n, fmt.Errorf("download %s: %w", id, err)
		}
		return n, nil
	}
	tmp := out + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", id, err)
	}
	n, err := io.Copy(f, body)
	if err == nil {
		// On disk before it takes the final name: a crash right after
		// must not leave a short file that reads as the download.
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, out)
	}
	if err != nil {
		os.Remove(tmp)
		return n, fmt.Errorf("download %s to %s: %w", id, out, err)
	}
	return n, nil
}

// withContext wraps err with context, except an error the server answered,
// which is printed as the server worded it.
func withContext(err error, format string, args ...any) error {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return err
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// setNonEmpty sets q[key] when value is not empty.
func setNonEmpty(q url.Values, key, value string) {
	if value != "" {
		q.Set(key, value)
	}
}

// withQuery appends q to path when it is not empty.
func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}
