"""What driver, ipam and plugin share: IP types and error kinds. It imports nothing of ours."""
