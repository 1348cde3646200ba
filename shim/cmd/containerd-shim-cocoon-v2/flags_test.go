package main

import "flag"

func flagsParse() {
	if !flag.Parsed() {
		flag.Parse()
	}
}
