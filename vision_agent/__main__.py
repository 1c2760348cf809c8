from vision_agent.cli import main

raise SystemExit(main())
