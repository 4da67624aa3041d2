package monitoring

import (
	"regexp"
	"strings"

	"github.com/getsentry/sentry-go"
)

// redacted replaces every secret removed from an event.
const redacted = "[Filtered]"

var (
	// sensitiveName matches header, tag, extra and context keys whose
	// values are secrets.
	sensitiveName = regexp.MustCompile(`(?i)(key|token|secret|passw|authorization|cookie|credential|session)`)
	// secretValue matches secrets inside free text: bearer credentials,
	// vbatch API keys ("vb-" and base62) and OpenAI-style "sk-" keys.
	secretValue = regexp.MustCompile(`(?i)bearer\s+[A-Za-z0-9._~+/=-]+|\bvb-[A-Za-z0-9]{8,}|\bsk-[A-Za-z0-9_-]{16,}`)
)

// scrubString removes secrets from free text.
func scrubString(s string) string {
	return secretValue.ReplaceAllStringFunc(s, func(m string) string {
		if strings.HasPrefix(strings.ToLower(m), "bearer") {
			return "Bearer " + redacted
		}
		return redacted
	})
}

// scrubValue removes secrets from an arbitrary extra or context value,
// walking maps and slices.
func scrubValue(v any) any {
	switch x := v.(type) {
	case string:
		return scrubString(x)
	case map[string]any:
		for k, inner := range x {
			if sensitiveName.MatchString(k) {
				x[k] = redacted
			} else {
				x[k] = scrubValue(inner)
			}
		}
		return x
	case map[string]string:
		scrubStringMap(x)
		return x
	case []any:
		for i := range x {
			x[i] = scrubValue(x[i])
		}
		return x
	case []string:
		for i := range x {
			x[i] = scrubString(x[i])
		}
		return x
	case error:
		return scrubString(x.Error())
	default:
		return v
	}
}

// scrubStringMap filters values under sensitive keys and secrets in the rest.
func scrubStringMap(m map[string]string) {
	for k, v := range m {
		if sensitiveName.MatchString(k) {
			m[k] = redacted
		} else {
			m[k] = scrubString(v)
		}
	}
}

// scrubEvent removes API keys and other secrets from every free-text and
// key-value part of event.
func scrubEvent(e *sentry.Event) {
	e.Message = scrubString(e.Message)
	for i := range e.Exception {
		e.Exception[i].Value = scrubString(e.Exception[i].Value)
	}
	if e.Request != nil {
		scrubStringMap(e.Request.Headers)
		scrubStringMap(e.Request.Env)
		if e.Request.Cookies != "" {
			e.Request.Cookies = redacted
		}
		e.Request.QueryString = scrubQuery(e.Request.QueryString)
		e.Request.URL = scrubString(e.Request.URL)
		e.Request.Data = scrubString(e.Request.Data)
	}
	scrubStringMap(e.Tags)
	for name, c := range e.Contexts {
		scrubValue(map[string]any(c))
		e.Contexts[name] = c
	}
	for _, b := range e.Breadcrumbs {
		scrubBreadcrumb(b)
	}
}

// scrubQuery filters values of sensitive query parameters.
func scrubQuery(q string) string {
	if q == "" {
		return q
	}
	parts := strings.Split(q, "&")
	for i, p := range parts {
		name, _, found := strings.Cut(p, "=")
		if found && sensitiveName.MatchString(name) {
			parts[i] = name + "=" + redacted
		} else {
			parts[i] = scrubString(p)
		}
	}
	return strings.Join(parts, "&")
}

// scrubBreadcrumb removes secrets from a breadcrumb's message and data.
func scrubBreadcrumb(b *sentry.Breadcrumb) {
	if b == nil {
		return
	}
	b.Message = scrubString(b.Message)
	scrubValue(b.Data)
}
