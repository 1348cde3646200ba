package client_test

import (
	"net/http"
	"net/http/cookiejar"
)

func guestHTTP() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar}
}
