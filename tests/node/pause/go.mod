module switchboard.test/pause

go 1.26
