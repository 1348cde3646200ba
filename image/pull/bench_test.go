package pull

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cocoon-containers/cocoon/image/imagetest"
)

// benchImage is busybox, a layer of 400 small files and a 24 MiB layer of
// incompressible data: 3 layers, about 27 MiB unpacked.
func benchImage(b *testing.B) v1.Image {
	rng := rand.New(rand.NewSource(1))
	var small []imagetest.Entry
	small = append(small, imagetest.Entry{Name: "usr/", Type: '5'}, imagetest.Entry{Name: "usr/share/", Type: '5'})
	for i := range 400 {
		body := make([]byte, 512+rng.Intn(4096))
		for j := range body {
			body[j] = byte('a' + rng.Intn(26))
		}
		small = append(small, imagetest.Entry{Name: fmt.Sprintf("usr/share/f%03d", i), Body: string(body)})
	}
	big := make([]byte, 24<<20)
	rng.Read(big)
	return imagetest.Image(b, imagetest.BusyboxLayer(b), imagetest.Layer(b, small...),
		imagetest.Layer(b, imagetest.Entry{Name: "data/", Type: '5'}, imagetest.Entry{Name: "data/blob", Body: string(big)}))
}

// BenchmarkPullUnpack pulls and unpacks the image from a loopback registry
// with an empty layer cache each time.
func BenchmarkPullUnpack(b *testing.B) {
	reg := imagetest.NewRegistry(b)
	imagetest.Push(b, reg.Ref("bench:1"), benchImage(b))
	work := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cache, err := NewCache(filepath.Join(work, fmt.Sprint("cache", i)))
		if err != nil {
			b.Fatal(err)
		}
		o := Options{AllowPlainHTTPLoopback: true, Cache: cache}
		o.Unpack.NoChown = os.Getuid() != 0
		if _, err := Pull(context.Background(), reg.Ref("bench:1"), filepath.Join(work, fmt.Sprint("rootfs", i)), o); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(filepath.Join(work, fmt.Sprint("rootfs", i)))
		os.RemoveAll(filepath.Join(work, fmt.Sprint("cache", i)))
		b.StartTimer()
	}
}

// BenchmarkSkopeoUmoci is the reference: skopeo copy of the same image from
// the same kind of registry into an OCI layout, then umoci unpack.
func BenchmarkSkopeoUmoci(b *testing.B) {
	for _, tool := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	if os.Getuid() != 0 {
		b.Skip("umoci unpack needs root here")
	}
	reg := imagetest.NewRegistry(b)
	imagetest.Push(b, reg.Ref("bench:1"), benchImage(b))
	work := b.TempDir()
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		layout := filepath.Join(work, fmt.Sprint("oci", i))
		bundle := filepath.Join(work, fmt.Sprint("bundle", i))
		run("skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://"+reg.Ref("bench:1"), "oci:"+layout+":bench")
		run("umoci", "unpack", "--image", layout+":bench", bundle)
		b.StopTimer()
		os.RemoveAll(layout)
		os.RemoveAll(bundle)
		b.StartTimer()
	}
}
