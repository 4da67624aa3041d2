package engine

import "strings"

// withheldEnvPrefixes are the environment variables of the agent that vLLM
// does not get. vLLM runs model code (trust_remote_code, custom kernels),
// and on a host running `vbatch --role all` the agent's environment holds
// the cluster's secrets from vbatch.env: VBATCH_ROOT_KEY (the admin API
// key), VBATCH_GOSSIP_KEY, SENTRY_DSN and the Pyroscope credentials. None
// of them is of use to vLLM. Everything else passes: vLLM, PyTorch, CUDA,
// NCCL and Hugging Face read many variables (PATH, HOME, LD_LIBRARY_PATH,
// CUDA_*, NCCL_*, HF_*, VLLM_*...) and a list of what to keep would drop
// the one a host needs.
var withheldEnvPrefixes = []string{"VBATCH_", "SENTRY_", "PYROSCOPE_"}

// vllmEnv returns the environment for a vLLM child: parent (os.Environ())
// without the withheld variables and without those named in set, followed
// by set ("NAME=value"), so the agent's own values (VLLM_API_KEY,
// CUDA_VISIBLE_DEVICES, the owner mark) are the only ones of their names.
func vllmEnv(parent []string, set ...string) []string {
	names := make(map[string]bool, len(set))
	for _, kv := range set {
		name, _, _ := strings.Cut(kv, "=")
		names[name] = true
	}
	env := make([]string, 0, len(parent)+len(set))
	for _, kv := range parent {
		name, _, _ := strings.Cut(kv, "=")
		if names[name] || withheld(name) {
			continue
		}
		env = append(env, kv)
	}
	return append(env, set...)
}

// withheld reports whether the variable name is kept from vLLM.
func withheld(name string) bool {
	for _, p := range withheldEnvPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
