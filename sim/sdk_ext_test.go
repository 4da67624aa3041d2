package sim_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vbatch/vbatch/sim"
)

// TestOpenAISDK talks to the simulator with the official Go SDK: its
// objects, streams and errors must decode as OpenAI's and vLLM's do.
func TestOpenAISDK(t *testing.T) {
	srv := httptest.NewServer(sim.New(sim.Config{APIKey: "key"}).Handler())
	defer srv.Close()
	client := openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey("key"), option.WithMaxRetries(0))
	ctx := context.Background()
	params := openai.ChatCompletionNewParams{
		Model:               sim.DefaultModel,
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("tell me a story")},
		MaxCompletionTokens: openai.Int(6),
	}
	chat, err := client.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(chat.Choices) != 1 || len(strings.Fields(chat.Choices[0].Message.Content)) != 6 || chat.Usage.CompletionTokens != 6 || chat.Usage.PromptTokens != 4+4 {
		t.Fatalf("chat: %+v", chat)
	}

	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(ctx, params)
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.Choices[0].Message.Content != chat.Choices[0].Message.Content || acc.Usage.TotalTokens != chat.Usage.TotalTokens {
		t.Fatalf("stream gave %q %+v, plain %q %+v", acc.Choices[0].Message.Content, acc.Usage, chat.Choices[0].Message.Content, chat.Usage)
	}

	cmpl, err := client.Completions.New(ctx, openai.CompletionNewParams{
		Model:     sim.DefaultModel,
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("once upon a time")},
		MaxTokens: openai.Int(3),
	})
	if err != nil || len(cmpl.Choices) != 1 || cmpl.Usage.PromptTokens != 4 {
		t.Fatalf("completion: %+v %v", cmpl, err)
	}

	for _, format := range []openai.EmbeddingNewParamsEncodingFormat{openai.EmbeddingNewParamsEncodingFormatFloat, openai.EmbeddingNewParamsEncodingFormatBase64} {
		emb, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model:          sim.DefaultModel,
			Input:          openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a b", "c"}},
			EncodingFormat: format,
		})
		if err != nil || len(emb.Data) != 2 || len(emb.Data[1].Embedding) != sim.EmbeddingDim {
			t.Fatalf("embeddings (%s): %+v %v", format, emb, err)
		}
	}

	models, err := client.Models.List(ctx)
	if err != nil || len(models.Data) != 1 || models.Data[0].ID != sim.DefaultModel {
		t.Fatalf("models: %+v %v", models, err)
	}

	params.Model = "missing"
	_, err = client.Chat.Completions.New(ctx, params)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Fatalf("unknown model: %v", err)
	}
	bad := openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey("nope"), option.WithMaxRetries(0))
	if _, err := bad.Models.List(ctx); !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("wrong key: %v", err)
	}
}
