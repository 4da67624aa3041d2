package cli

import (
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

type fileObject struct {
	ID        string `json:"id"`
	Bytes     int64  `json:"bytes"`
	CreatedAt int64  `json:"created_at"`
	Filename  string `json:"filename"`
	Purpose   string `json:"purpose"`
}

type fileList struct {
	Data    []fileObject `json:"data"`
	HasMore bool         `json:"has_more"`
}

func filesCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "files", Short: "Upload, list, download and delete files"}
	var purpose string
	upload := &cobra.Command{
		Use:   "upload FILE",
		Short: "Upload a file (streamed, never held in memory)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := e.uploadFile(cmd, args[0], purpose)
			if err != nil {
				return err
			}
			return e.showFiles(f)
		},
	}
	upload.Flags().StringVar(&purpose, "purpose", "batch", "file purpose")

	var limit int
	var listPurpose, after string
	list := &cobra.Command{
		Use:   "list",
		Short: "List files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if listPurpose != "" {
				q.Set("purpose", listPurpose)
			}
			if limit > 0 {
				q.Set("limit", fmt.Sprint(limit))
			}
			if after != "" {
				q.Set("after", after)
			}
			var l fileList
			if ok, err := e.get(cmd, http.MethodGet, "/v1/files?"+q.Encode(), nil, &l); !ok || err != nil {
				return err
			}
			return e.showFiles(l.Data...)
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "most files to list")
	list.Flags().StringVar(&listPurpose, "purpose", "", "only files with this purpose")
	list.Flags().StringVar(&after, "after", "", "list after this file id")

	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show one file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var f fileObject
			if ok, err := e.get(cmd, http.MethodGet, "/v1/files/"+url.PathEscape(args[0]), nil, &f); !ok || err != nil {
				return err
			}
			return e.showFiles(f)
		},
	}

	var out string
	download := &cobra.Command{
		Use:   "download ID",
		Short: "Download a file's content (to -f FILE, or stdout)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.download(cmd, args[0], out)
		},
	}
	download.Flags().StringVarP(&out, "file", "f", "-", "where to write the content (- for stdout)")

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res struct {
				ID      string `json:"id"`
				Deleted bool   `json:"deleted"`
			}
			if ok, err := e.get(cmd, http.MethodDelete, "/v1/files/"+url.PathEscape(args[0]), nil, &res); !ok || err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "deleted %s\n", res.ID)
			return nil
		},
	}
	cmd.AddCommand(upload, list, get, download, del)
	return cmd
}

func (e *env) showFiles(files ...fileObject) error {
	if e.output == "json" {
		if len(files) == 1 {
			return e.printJSON(files[0])
		}
		return e.printJSON(files)
	}
	var rows [][]string
	for _, f := range files {
		rows = append(rows, []string{f.ID, f.Purpose, fmt.Sprint(f.Bytes), f.Filename, unixTime(f.CreatedAt)})
	}
	e.table([]string{"ID", "PURPOSE", "BYTES", "FILENAME", "CREATED"}, rows)
	return nil
}

// uploadFile streams path as multipart through a pipe: purpose first, then
// the file part, so the server can check the purpose before the bytes.
func (e *env) uploadFile(cmd *cobra.Command, path, purpose string) (fileObject, error) {
	var f fileObject
	src, err := os.Open(path)
	if err != nil {
		return f, err
	}
	defer src.Close()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			if err := mw.WriteField("purpose", purpose); err != nil {
				return err
			}
			part, err := mw.CreateFormFile("file", filepath.Base(path))
			if err != nil {
				return err
			}
			if _, err := io.Copy(part, src); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	body, err := e.client.Stream(cmd.Context(), http.MethodPost, "/v1/files", mw.FormDataContentType(), pr)
	if err != nil {
		pr.CloseWithError(err)
		return f, fmt.Errorf("upload %s: %w", path, err)
	}
	defer body.Close()
	if err := decodeJSON(body, &f); err != nil {
		return f, fmt.Errorf("upload %s: %w", path, err)
	}
	return f, nil
}

func (e *env) download(cmd *cobra.Command, id, out string) error {
	body, err := e.client.Stream(cmd.Context(), http.MethodGet, "/v1/files/"+url.PathEscape(id)+"/content", "", nil)
	if err != nil {
		return err
	}
	defer body.Close()
	if out == "-" || out == "" {
		_, err = io.Copy(e.stdout, body)
		return err
	}
	tmp := out + ".part"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, body); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("download %s: %w", id, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
