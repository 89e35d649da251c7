version_flag = 'v1.1.455'
